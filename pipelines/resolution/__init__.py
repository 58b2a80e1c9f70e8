"""Resolution: the stage that calls the entity-resolution engine on the accepted snapshots."""
