"""``manage.py demo``: the shop's emails sent by a real worker to a real SMTP server."""
