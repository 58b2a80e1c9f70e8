#!/usr/bin/env bash
# Debian's Chromium for the web-page tests (tests/test_service_pages.py drive it headless through
# Playwright with executable_path=/usr/bin/chromium; nothing is downloaded by Playwright itself),
# which also prints the credit report to PDF (serving/report.py), and poppler-utils, whose
# pdftotext and pdftoppm read those PDFs back in tests/test_report.py.
set -euo pipefail
# (and a CJK font, so that screenshots of the Chinese pages show characters, not boxes)
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v chromium >/dev/null 2>&1 || ! fc-list 2>/dev/null | grep -qi "wenquanyi\|noto sans cjk"; then
  echo "install-chromium: installing Debian's chromium and fonts-wqy-microhei"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-microhei >/dev/null
fi
if ! command -v pdftoppm >/dev/null 2>&1 || ! command -v pdftotext >/dev/null 2>&1; then
  echo "install-chromium: installing poppler-utils (pdftotext, pdftoppm)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq poppler-utils >/dev/null
fi
echo "install-chromium: $(chromium --version 2>/dev/null | head -1); $(pdftoppm -v 2>&1 | head -1)"
