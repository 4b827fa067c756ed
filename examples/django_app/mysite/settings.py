"""Settings of the example Django site: only what publishing tasks needs."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
INSTALLED_APPS = ["shop"]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "mysite.urls"
WSGI_APPLICATION = "mysite.wsgi.application"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB", str(BASE_DIR / "db.sqlite3")),
    }
}
USE_TZ = True

# Where and as whom the site publishes (shop/taskhub.py); the worker reads the same variables.
TASKHUB = {
    "url": os.environ.get("TASKHUB_URL", "ws://127.0.0.1:8080"),
    "name": os.environ.get("TASKHUB_NAME", "shop"),
    "key": os.environ.get("TASKHUB_KEY", ""),
}
