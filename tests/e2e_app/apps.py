from django.apps import AppConfig


class E2EAppConfig(AppConfig):
    name = "tests.e2e_app"
    label = "e2e_app"
