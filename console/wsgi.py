"""
WSGI config for console project.

It exposes the WSGI callable as a module-level variable named ``application``.

For more information on this file, see
https://docs.djangoproject.com/en/5.2/howto/deployment/wsgi/
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

application = get_wsgi_application()

# Django runs no system checks here (gunicorn imports this module): refuse to
# serve when verification codes would stay on this machine (opsapp.E008/E009).
from opsapp.checks import require_code_delivery  # noqa: E402  (needs the app registry set up above)

require_code_delivery()
