"""Links the admin index to the live page (:mod:`streaming.admin_live`).

Only when the project has not set an index template of its own; the link shows
once ``streaming.urls`` is included.
"""

from django.contrib import admin

if admin.site.index_template is None:
    admin.site.index_template = "streaming/admin_index.html"
