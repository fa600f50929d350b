"""Admin registrations, one module per model (imported here so Django finds them)."""

from django.contrib import admin

from opsapp.admin import audit, operation, revision, rollback, snapshot, target, two_factor  # noqa: F401

# The collapsible app list at the left takes 300 px of a 1280 px screen, which the audit log and the
# revision list need for their columns; the breadcrumbs and the dashboard's app list lead everywhere it does.
admin.site.enable_nav_sidebar = False
# "View site" would lead back to the admin: the console has no other site.
admin.site.site_url = None
