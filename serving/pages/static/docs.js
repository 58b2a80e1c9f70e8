// Starts Swagger UI on /docs from a file, not an inline script, so the service's content security
// policy can stay at 'self'. The description comes from /openapi.json; "Authorize" takes a token
// from `credit token create` and keeps it in this tab only (no persistAuthorization).
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    deepLinking: true,
    validatorUrl: null, // the public validator would be a request outside the service
    tryItOutEnabled: false,
  });
});
