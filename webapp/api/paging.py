"""The API's pagination header: the same fields on every page, past the last one too."""

from __future__ import annotations

import marshmallow as ma
from flask_smorest import Blueprint
from flask_smorest.pagination import PaginationMetadataSchema


class PagingSchema(PaginationMetadataSchema):
    """X-Pagination as sent: `total`, `total_pages` and `page` on every page; the others
    only where there is such a page (none of them on an empty list)."""

    total = ma.fields.Int(required=True, metadata={"description": "Total number of items."})
    total_pages = ma.fields.Int(required=True,
                                metadata={"description": "Total number of pages (0: none)."})
    page = ma.fields.Int(required=True, metadata={
        "description": "The page asked for, also past the last page (whose list is empty)."})


class PagedBlueprint(Blueprint):
    """flask-smorest's Blueprint, but X-Pagination names the page asked for on every page:
    past the last page (and on an empty list) it left `page` out, so a client paging until
    a page comes back empty could not tell which page that was."""

    @staticmethod
    def _make_pagination_metadata(page, page_size, item_count):
        metadata = Blueprint._make_pagination_metadata(page, page_size, item_count)
        return PagingSchema().dump({**metadata, "page": page})
