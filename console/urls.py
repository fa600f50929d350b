from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    # Two-factor sign-in pages (opsapp.admin.two_factor); before the admin's catch-all.
    path("admin/2fa/", include("opsapp.admin.two_factor")),
    path("admin/", admin.site.urls),
]
