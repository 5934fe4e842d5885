"""The admin API (``/admin/*``) and the dashboard (``/ui``)."""

from fastgw.admin.api import AdminApi

__all__ = ["AdminApi"]
