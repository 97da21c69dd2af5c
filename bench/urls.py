"""The bench servers serve no HTTP pages."""

urlpatterns: list = []
