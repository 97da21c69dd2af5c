"""The chat's REST API: people, conversations (only one's own), ordering, ``after=``,
pagination; session and token authentication."""

import json

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from chat.models import Message
from chat.protocol import ChatMessage

pytestmark = pytest.mark.django_db

USERS_URL = "/api/users/"
MESSAGES_URL = "/api/chat/messages/"


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def people():
    User = get_user_model()
    return {
        "alice": User.objects.create_user("alice", password="pw-alice-1", first_name="Alice"),
        "bob": User.objects.create_user(
            "bob", password="pw-bob-1", first_name="Bob", last_name="B."
        ),
        "carol": User.objects.create_user("carol", password="pw-carol-1"),
        "dave": User.objects.create_user("dave", password="pw-dave-1", is_active=False),
    }


def client_for(user):
    client = APIClient()
    client.force_login(user)
    return client


def send(sender, recipient, text):
    return Message.objects.create(sender=sender, recipient=recipient, text=text)


def test_users_lists_active_people_other_than_me(people):
    response = client_for(people["alice"]).get(USERS_URL)
    assert response.status_code == 200
    assert response.json()["results"] == [
        {"id": people["bob"].pk, "username": "bob", "display_name": "Bob B."},
        {"id": people["carol"].pk, "username": "carol", "display_name": "carol"},
    ]


def test_anonymous_requests_are_refused(people):
    anonymous = APIClient()
    assert anonymous.get(USERS_URL).status_code in (401, 403)
    assert anonymous.get(MESSAGES_URL, {"with": people["bob"].pk}).status_code in (401, 403)


def test_token_authentication(people):
    token = Token.objects.create(user=people["bob"])
    send(people["alice"], people["bob"], "hi bob")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    response = client.get(MESSAGES_URL, {"with": people["alice"].pk})
    assert response.status_code == 200
    assert [m["text"] for m in response.json()["results"]] == ["hi bob"]
    client.credentials(HTTP_AUTHORIZATION="Token not-a-key")
    assert client.get(USERS_URL).status_code in (401, 403)


def test_conversation_is_both_directions_oldest_first_and_nobody_elses(people):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    m1 = send(alice, bob, "one")
    send(bob, carol, "bob to carol: secret")
    m2 = send(bob, alice, "two")
    send(carol, bob, "carol to bob: secret")
    m3 = send(alice, bob, "three")
    send(alice, carol, "alice to carol")

    response = client_for(alice).get(MESSAGES_URL, {"with": bob.pk})
    assert response.status_code == 200
    body = response.json()
    assert [m["id"] for m in body["results"]] == [m1.pk, m2.pk, m3.pk]
    assert body["results"][1] == {
        "id": m2.pk,
        "sender_id": bob.pk,
        "recipient_id": alice.pk,
        "text": "two",
        "sent_at": body["results"][1]["sent_at"],
    }
    assert body["next"] is None

    # Alice can name any user, but only ever reads her side: bob<->carol stays hidden.
    response = client_for(alice).get(MESSAGES_URL, {"with": carol.pk})
    assert [m["text"] for m in response.json()["results"]] == ["alice to carol"]
    response = client_for(carol).get(MESSAGES_URL, {"with": bob.pk})
    assert [m["text"] for m in response.json()["results"]] == [
        "bob to carol: secret",
        "carol to bob: secret",
    ]


def test_after_returns_only_newer_messages(people):
    alice, bob = people["alice"], people["bob"]
    first = send(alice, bob, "seen")
    send(bob, alice, "missed 1")
    send(alice, bob, "missed 2")
    response = client_for(bob).get(MESSAGES_URL, {"with": alice.pk, "after": first.pk})
    assert [m["text"] for m in response.json()["results"]] == ["missed 1", "missed 2"]


def test_pages_follow_next_until_null(people):
    alice, bob = people["alice"], people["bob"]
    sent = [send(alice, bob, f"m{n}").pk for n in range(5)]
    client = client_for(bob)
    url, query, seen, pages = MESSAGES_URL, {"with": alice.pk, "limit": 2}, [], 0
    while url:
        body = client.get(url, query).json()
        query = None  # `next` carries the whole query
        seen += [m["id"] for m in body["results"]]
        url = body["next"]
        pages += 1
    assert seen == sent and pages == 3


def test_items_are_chat_messages_as_the_socket_sends_them(people):
    alice, bob = people["alice"], people["bob"]
    stored = send(alice, bob, "same shape")
    body = client_for(alice).get(MESSAGES_URL, {"with": bob.pk}).json()
    assert (
        ChatMessage.model_validate_json(json.dumps(body["results"][0])) == stored.to_chat_message()
    )


@pytest.mark.parametrize(
    "query, field",
    [
        ({}, "with"),
        ({"with": "bob"}, "with"),
        ({"with": 0}, "with"),
        ({"with": 1, "after": -1}, "after"),
        ({"with": 1, "limit": "x"}, "limit"),
    ],
)
def test_bad_queries_are_400_naming_the_parameter(people, query, field):
    response = client_for(people["alice"]).get(MESSAGES_URL, query)
    assert response.status_code == 400
    assert field in response.json()
