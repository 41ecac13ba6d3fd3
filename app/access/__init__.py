"""Who may do what over HTTP: the cross-site guard (``guard``), API tokens and their scopes
(``tokens``), which scope a request needs and when the front may start (``policy``), the
middleware that applies them (``middleware``) and the dashboard's sign-in form (``login``).
docs/security.md explains the rules and the decisions."""
