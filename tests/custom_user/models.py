"""A custom user model as Django's docs allow: a UUID primary key and no ``is_active``
field (``AbstractBaseUser.is_active`` is a class attribute, True). tests/test_custom_user.py."""

import uuid

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.db import models


class MemberManager(BaseUserManager):
    def create_user(self, email, password=None):
        user = self.model(email=email)
        user.set_password(password)
        user.save()
        return user


class Member(AbstractBaseUser):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    email = models.EmailField(unique=True)
    USERNAME_FIELD = "email"
    objects = MemberManager()
