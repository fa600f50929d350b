"""One date form on every page: ISO-like, 24-hour, with the time zone (issue 15).

Django's English locale would show "Dec. 1, 2026, 6:43 a.m." in the admin's
lists and forms while other pages showed "2026-12-01 06:45:39"; operators
compare times across pages and with logs, so every page uses this form.
"""

DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i T"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
