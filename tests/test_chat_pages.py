"""The chat's web pages, its admin and the demo accounts (Django's test client)."""

import json
import re

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from chat.demo import DEMO_PASSWORD
from chat.models import Message
from chat.protocol import MAX_TEXT_LENGTH

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice():
    return get_user_model().objects.create_user("alice", password="pw-alice-1", first_name="Alice")


def test_the_chat_needs_a_signed_in_user(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/"


def test_sign_in_then_the_chat_page_knows_who_i_am(client, alice):
    page = client.get("/login/?next=/")
    assert page.status_code == 200 and b'name="password"' in page.content
    response = client.post("/login/", {"username": "alice", "password": "pw-alice-1", "next": "/"})
    assert response.status_code == 302 and response["Location"] == "/"

    page = client.get("/").content.decode()
    config = json.loads(
        re.search(r'id="chat-config" type="application/json">(.*?)</script>', page)[1]
    )
    assert config == {
        "me": {"id": alice.pk, "username": "alice", "display_name": "Alice"},
        "usersUrl": "/api/users/",
        "messagesUrl": "/api/chat/messages/",
        "loginUrl": "/login/",
        "maxTextLength": MAX_TEXT_LENGTH,
    }
    assert 'src="/static/chat/chat.js"' in page and 'type="module"' in page
    assert 'id="status"' in page  # the connection badge


def test_wrong_password_shows_an_error(client, alice):
    response = client.post("/login/", {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert b'class="form-error"' in response.content


def test_sign_out_is_a_post_and_ends_the_session(client, alice):
    client.force_login(alice)
    response = client.post("/logout/")
    assert response.status_code == 302 and response["Location"] == "/login/"
    assert client.get("/").status_code == 302


def test_static_files_of_the_page_exist(client):
    from django.contrib.staticfiles import finders

    for path in ("chat/chat.js", "chat/chat.css", "chat/login.js", "streaming/streampod.js"):
        assert finders.find(path), path


@pytest.mark.parametrize("debug", [True, False])
def test_demo_accounts_are_shown_only_with_debug(client, settings, debug):
    settings.DEBUG = debug
    page = client.get("/login/").content.decode()
    assert (DEMO_PASSWORD in page) is debug
    assert ('data-username="bob"' in page) is debug


def test_seed_demo_refuses_to_make_known_passwords_with_debug_off(settings):
    """A production server must not get a superuser whose password is in the source
    (helper "operator13": it was created without a word)."""
    settings.DEBUG = False
    with pytest.raises(CommandError, match="createsuperuser"):
        call_command("seed_demo")
    assert not get_user_model().objects.exists()


@pytest.mark.parametrize("debug", [True, False])
def test_seed_demo_creates_accounts_once_and_prints_credentials_only_with_debug(
    settings, capsys, debug
):
    settings.DEBUG = debug
    on_purpose = [] if debug else ["--known-passwords-without-debug"]
    call_command("seed_demo", *on_purpose)
    call_command("seed_demo", *on_purpose)  # idempotent
    User = get_user_model()
    assert sorted(User.objects.values_list("username", flat=True)) == [
        "admin",
        "alice",
        "bob",
        "carol",
    ]
    assert User.objects.get(username="admin").is_superuser
    assert User.objects.get(username="bob").check_password(DEMO_PASSWORD)
    out = capsys.readouterr().out
    assert (DEMO_PASSWORD in out) is debug
    assert ("http://127.0.0.1:8000/" in out) is debug


def test_admin_lists_searches_and_filters_messages(client, alice):
    User = get_user_model()
    admin = User.objects.create_superuser("root", "root@example.com", "pw-root-1")
    bob = User.objects.create_user("bob", password="pw-bob-1")
    Message.objects.create(sender=alice, recipient=bob, text="lunch at noon?")
    Message.objects.create(sender=bob, recipient=alice, text="sure")
    client.force_login(admin)
    page = client.get("/admin/chat/message/")
    assert page.status_code == 200
    assert b"lunch at noon?" in page.content and b"sure" in page.content
    page = client.get("/admin/chat/message/", {"q": "lunch"})
    assert b"lunch at noon?" in page.content and b">sure<" not in page.content
    page = client.get("/admin/chat/message/", {"sender__id__exact": bob.pk})
    assert b"sure" in page.content and b"lunch at noon?" not in page.content
    assert client.get("/admin/auth/user/").status_code == 200  # users: Django's own admin
    assert client.get("/admin/chat/message/add/").status_code == 200


def test_the_page_shows_my_name_and_sets_no_maxlength(client, alice):
    client.force_login(alice)
    page = client.get("/").content.decode()
    assert re.search(
        r'<span class="me-name" id="me-name" title="Signed in as Alice \(@alice\)">Alice</span>',
        page,
    )
    # The limit is the counter's job (chat.js): a maxlength would cut a paste silently.
    assert "maxlength" not in page
    assert 'id="composer-limit"' in page and 'id="connection-banner"' in page


@pytest.mark.parametrize("signed_out", [True, False])
def test_the_sign_in_page_says_when_a_session_ended(client, signed_out):
    query = "?next=/%23%40bob&signed_out=1" if signed_out else "?next=/"
    page = client.get("/login/" + query).content.decode()
    assert ("You were signed out." in page) is signed_out
    if signed_out:
        assert 'name="next" value="/#@bob"' in page


def test_people_are_active_users_but_not_staff_unless_we_talked(client, alice):
    User = get_user_model()
    User.objects.create_user("bob", password="pw-bob-1")
    User.objects.create_user("carol", password="pw-carol-1", is_active=False)
    admin = User.objects.create_superuser("admin", "admin@example.com", "pw-admin-1")
    ops = User.objects.create_user("ops", password="pw-ops-1", is_staff=True)
    User.objects.create_user("root", password="pw-root-1", is_superuser=True)
    client.force_login(alice)

    def listed():
        return [person["username"] for person in client.get("/api/users/").json()["results"]]

    assert listed() == ["bob"]
    Message.objects.create(sender=admin, recipient=alice, text="Welcome!")  # they wrote
    Message.objects.create(sender=alice, recipient=ops, text="Is the server down?")  # I did
    assert listed() == ["admin", "bob", "ops"]

    # Staff see the people one chats with too, and not themselves.
    client.force_login(admin)
    assert listed() == ["alice", "bob"]
