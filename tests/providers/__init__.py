"""Tests of the dialect translators (``fastgw.providers``)."""
