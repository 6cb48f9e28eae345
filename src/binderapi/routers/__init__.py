"""HTTP routes. Each router parses its request and delegates; no business logic lives here."""
