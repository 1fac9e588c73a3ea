"""The API's pagination: page numbers that are integers, the same header fields on every page."""

from __future__ import annotations

import re

import marshmallow as ma
from flask_smorest import Blueprint
from flask_smorest.pagination import PaginationMetadataSchema
from webargs.flaskparser import FlaskParser

# An integer as JSON and the OpenAPI write one: ASCII digits, perhaps a minus.
_INTEGER = re.compile(r"-?[0-9]+")
_PAGE_PARAMETERS = ("page", "page_size")


class PagingSchema(PaginationMetadataSchema):
    """X-Pagination as sent: `total`, `total_pages` and `page` on every page; the others
    only where there is such a page (none of them on an empty list)."""

    total = ma.fields.Int(required=True, metadata={"description": "Total number of items."})
    total_pages = ma.fields.Int(required=True,
                                metadata={"description": "Total number of pages (0: none)."})
    page = ma.fields.Int(required=True, metadata={
        "description": "The page asked for, also past the last page (whose list is empty)."})


class _PageParser(FlaskParser):
    """`page` and `page_size` as integers: Python's int() reads `1_0` as 10 and `１`
    (fullwidth) or `١` (Arabic-Indic) as 1, which no other client or the OpenAPI takes for
    integers; a typo paged silently elsewhere. 422 as for `page=abc`."""

    def load_querystring(self, req, schema):
        refused = {name: ["Not a valid integer."] for name in _PAGE_PARAMETERS
                   if name in req.args and not _INTEGER.fullmatch(req.args[name])}
        if refused:
            raise ma.ValidationError(refused)
        return super().load_querystring(req, schema)


class PagedBlueprint(Blueprint):
    """flask-smorest's Blueprint, but X-Pagination names the page asked for on every page:
    past the last page (and on an empty list) it left `page` out, so a client paging until
    a page comes back empty could not tell which page that was."""

    PAGINATION_ARGUMENTS_PARSER = _PageParser()

    @staticmethod
    def _make_pagination_metadata(page, page_size, item_count):
        metadata = Blueprint._make_pagination_metadata(page, page_size, item_count)
        return PagingSchema().dump({**metadata, "page": page})
