from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from opsapp.views import favicon, metrics

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    # Two-factor sign-in pages (opsapp.admin.two_factor); before the admin's catch-all.
    path("admin/2fa/", include("opsapp.admin.two_factor")),
    path("admin/", admin.site.urls),
    path("favicon.ico", favicon),
    # Prometheus scrape target (opsapp.views.metrics): off until a token or an allow-list is set.
    path("metrics", metrics, name="metrics"),
]

handler403 = "opsapp.views.permission_denied"
