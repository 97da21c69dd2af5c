"""The demo accounts ``make run`` creates (``manage.py seed_demo``)."""

DEMO_PASSWORD = "streampod"
#: (username, first name) of the people one can chat with.
DEMO_USERS = [("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol")]
ADMIN_USERNAME = "admin"
