"""The operator dashboard: server-rendered HTML pages with matplotlib SVG charts (no JavaScript, no CDN)."""
