"""The search page: videos whose name or transcript holds the words, with the matching lines."""

from __future__ import annotations

from flask import render_template, request

from webapp import extensions as ext
from webapp.services import publications, search
from webapp.services.errors import InvalidQuery
from webapp.ui import bp

PAGE_SIZE = 20


@bp.get("/search")
def search_page():
    """Search results (each line links to its moment in the video); the form alone without q."""
    query = request.args.get("q")
    page = max(1, request.args.get("page", 1, type=int) or 1)
    context = {"query": query or "", "hits": [], "total": 0, "page": page, "pages": 1,
               "message": None, "posters": set(), "marked": search.marked}
    status = 200
    if query is not None:
        try:
            hits, total = search.search(ext.db(), query, page, PAGE_SIZE)
        except InvalidQuery as exc:
            context["message"], status = exc.message, exc.status
        else:
            posters = publications.with_step(ext.db(), (h.video.id for h in hits), "thumbnails")
            context.update(hits=hits, total=total, pages=max(1, -(-total // PAGE_SIZE)),
                           posters=posters)
    return render_template("search/index.html", **context), status
