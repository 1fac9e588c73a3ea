"""Search across every video's name and published transcript."""

from __future__ import annotations

from flask.views import MethodView

from webapp import extensions as ext
from webapp.api.paging import PagedBlueprint
from webapp.api.parsing import Parser, option_errors
from webapp.api.schemas import SearchHitSchema, SearchQuerySchema
from webapp.api.videos import video_payload
from webapp.services import progress, search


class _Blueprint(PagedBlueprint):
    ARGUMENTS_PARSER = Parser()


blp = _Blueprint("search", __name__, description="Find the moment something was said")


@blp.route("/search")
class Search(MethodView):
    @blp.arguments(SearchQuerySchema, location="query")
    @blp.response(200, SearchHitSchema(many=True))
    @blp.paginate()
    @blp.doc(operationId="searchTranscripts")
    def get(self, args, pagination_parameters):
        """Search names and transcripts: best match first

        A name match comes first, then more matching segments, then newer videos. The
        segments of a transcript's English translation (a task run with `translate`) are
        searched too, and say so (`translation`). The total count is in the X-Pagination
        header, as for the list of videos.
        """
        with option_errors("query", "q"):
            hits, total = search.search(ext.db(), args["q"], pagination_parameters.page,
                                        pagination_parameters.page_size)
        pagination_parameters.item_count = total
        progress.prefetch_progress(ext.db(), [h.video.id for h in hits])
        return [{"video": video_payload(h.video), "name_matches": h.in_name,
                 "segment_count": h.segment_count,
                 "segments": [{"start": s.start, "end": s.end, "text": s.text,
                               "translation": s.translation} for s in h.segments]}
                for h in hits]
