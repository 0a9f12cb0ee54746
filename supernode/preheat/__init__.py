"""Preheat: images pushed to every selected node ahead of a surge, in the background,
over BitTorrent. ``jobs`` is the sans-IO model, ``service`` runs the jobs, ``api`` serves
them."""
