from django.shortcuts import render


def js_client(request):
    """A test page for streampod.js (see tests/browser)."""
    return render(request, "e2e/js_client.html")
