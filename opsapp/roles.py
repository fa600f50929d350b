"""The console's roles (groups) and their permissions. Used by a data migration.

operators  view everything, request downgrades, take, attach and restore snapshots (into a restore
           destination), execute with a code, cancel operations
approvers  receive verification codes, view everything
auditors   view everything, change nothing, export the audit log
"""

from __future__ import annotations

VIEW_ALL = [
    "opsapp.view_target",
    "opsapp.view_revision",
    "opsapp.view_snapshot",
    "opsapp.view_rollbackrequest",
    "opsapp.view_auditevent",
    "opsapp.view_operation",
]

ROLES: dict[str, list[str]] = {
    "operators": VIEW_ALL
    + [
        "opsapp.add_rollbackrequest",
        "opsapp.change_rollbackrequest",
        "opsapp.execute_rollbackrequest",
        "opsapp.take_snapshot",
        "opsapp.restore_snapshot",
        "opsapp.cancel_operation",
    ],
    "approvers": VIEW_ALL + ["opsapp.approve_rollbackrequest"],
    "auditors": VIEW_ALL + ["opsapp.export_auditevent"],
}


def sync_roles(apps) -> None:
    """Create the groups and give them exactly their permissions (idempotent).

    A permission whose model a later migration creates is skipped when an
    earlier migration runs this; that later migration runs it again.
    """
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, verbosity=0, apps=apps)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, perms in ROLES.items():
        group, _ = Group.objects.get_or_create(name=name)
        objs = []
        for perm in perms:
            app_label, codename = perm.split(".")
            found = Permission.objects.filter(content_type__app_label=app_label, codename=codename).first()
            if found is not None:
                objs.append(found)
        group.permissions.set(objs)
