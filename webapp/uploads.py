"""The request class of the app: uploads spooled straight into MEDIA_ROOT/staging, a
multipart body that cannot be read to its end said as such (400), and a disk that fills
up while it is received too (507)."""

from __future__ import annotations

import re
import typing as t

from flask import Request
from werkzeug.exceptions import BadRequest, ClientDisconnected

from webapp.services.errors import UPLOAD_DISK_FULL, InsufficientStorage, is_disk_full


class UploadRequest(Request):
    """Flask's request, spooling an uploaded file straight into MEDIA_ROOT/staging.

    werkzeug's default puts every file part over 500 KB in a temporary file in TMPDIR, which
    ingest then had to copy into MEDIA_ROOT/staging: each upload was written to disk twice
    (and held in RAM where TMPDIR is a tmpfs). The first file part of a request now goes to a
    StagedFile in staging, which ingest renames into place; any further file part (the API
    and the form take one file) keeps werkzeug's default. The staged file is deleted when the
    request ends unless ingest accepted it, even when parsing failed half-way (413, a cut
    body), when werkzeug never hands it to `files`.

    A multipart body that cannot be read to its closing boundary (the client went away, its
    Content-Length promised more than it sent, a chunked body ended before its last chunk,
    or the form is malformed) is a 400 saying so;
    werkzeug alone would hand the view an empty form, answered "file: Missing data".
    A disk that fills up while the file is received is a 507 (InsufficientStorage), the
    partial file deleted at once; it was a 500 "internal error" with a traceback.

    A file part's name sent as a raw Windows path (legacy_filename) keeps its backslashes,
    so that ingest.clean_filename keeps its last component.
    """

    _staged_upload: t.IO[bytes] | None = None
    _body_read: _CountingReader | None = None

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None,
                         content_length: int | None = None) -> t.IO[bytes]:
        if self._staged_upload is not None:
            return super()._get_file_stream(total_content_length, content_type, filename,
                                            content_length)
        from webapp import extensions as ext

        self._staged_upload = ext.storage().staging_file()
        return self._staged_upload

    def make_form_data_parser(self):
        parser = super().make_form_data_parser()
        # Not silent: _load_form_data turns the error into a 400 (see the class docstring).
        parser.silent = self.mimetype != "multipart/form-data"
        return parser

    def _get_stream_for_parsing(self) -> t.IO[bytes]:
        stream = super()._get_stream_for_parsing()
        if self.mimetype != "multipart/form-data":
            return stream
        self._body_read = _CountingReader(stream)  # how much arrived, for _unreadable
        return t.cast(t.IO[bytes], self._body_read)

    def _load_form_data(self) -> None:
        if "form" in self.__dict__ or self.mimetype != "multipart/form-data":
            return super()._load_form_data()
        if not self.mimetype_params.get("boundary"):
            self._no_form()
            raise BadRequest("the Content-Type multipart/form-data names no boundary")
        try:
            super()._load_form_data()
        except (ValueError, ClientDisconnected) as exc:
            self._no_form()
            raise BadRequest(self._unreadable(exc)) from None
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self._no_form()
            self._drop_staged()  # its space back at once, not when the request ends
            raise InsufficientStorage(UPLOAD_DISK_FULL) from None
        if self._body_read is not None:
            self.__dict__["stream"] = self._body_read.stream
        for _, file in self.files.items(multi=True):
            file.filename = legacy_filename(file.headers.get("Content-Disposition", ""),
                                            file.filename)

    def _no_form(self) -> None:
        """An empty form and files: a later look at them must not parse the body again."""
        empty = self.parameter_storage_class()
        self.__dict__.update(form=empty, files=self.parameter_storage_class())

    def _unreadable(self, exc: Exception) -> str:
        """Why the multipart body could not be read, in a sentence."""
        read = self._body_read.count if self._body_read else 0
        length = self.content_length
        # Chunked (no length), the connection gone: cut short, even in its first chunk,
        # before a byte was read; checked before "empty", which that would also look like.
        if length is None and isinstance(exc, ClientDisconnected):
            return ("the upload was cut short: the connection ended before the last chunk of "
                    "its chunked body arrived; nothing was stored, send it again")
        if read == 0 and not length:  # nothing sent: "send it again" would send nothing
            return ("the body is empty: send the file as multipart/form-data, in the field "
                    "`file`; nothing was stored")
        if length is not None and (isinstance(exc, ClientDisconnected) or read < length):
            return (f"the upload was cut short: {read:,} of the {length:,} bytes its "
                    "Content-Length announced arrived before the connection ended; "
                    "nothing was stored, send it again")
        if "cannot parse beyond" in str(exc):  # werkzeug: the data ended inside the form
            return ("the upload is incomplete: the body ends before the multipart form's "
                    "closing boundary; nothing was stored, send it again")
        return f"the multipart/form-data body is malformed ({exc}); nothing was stored"

    def _drop_staged(self) -> None:
        if self._staged_upload is not None:
            self._staged_upload.close()  # a StagedFile not moved into place: deleted

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._drop_staged()


class _CountingReader:
    """A body stream that counts what was read from it."""

    def __init__(self, stream: t.IO[bytes]) -> None:
        self.stream, self.count = stream, 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.count += len(data)
        return data


# A quoted filename="..." parameter of a Content-Disposition header, as sent.
_QUOTED_FILENAME = re.compile(r'(?:^|;)[ \t]*filename[ \t]*=[ \t]*"((?:[^"\\]|\\.)*)"',
                              re.IGNORECASE)


def legacy_filename(disposition: str, parsed: str | None) -> str | None:
    """The file part's name, `parsed` (werkzeug's) unless the quoted filename was a raw
    Windows path: then that path, as sent.

    Internet Explorer and legacy Edge send the whole path, its backslashes unescaped
    (filename="C:\\Users\\me\\talk.mp4"); werkzeug reads each backslash as an RFC 9110
    escape of the next character, so the name was stored as "C:Usersmetalk.mp4". Browsers
    send no backslash escapes in a file name (the HTML Standard writes a quote as %22), and
    a backslash before anything but a quote or a backslash escapes nothing, so such a name
    is taken as sent.
    """
    found = _QUOTED_FILENAME.search(disposition)
    if found is None or parsed is None:
        return parsed
    raw = found.group(1)
    escaped = re.findall(r"\\(.)", raw)  # (each backslash and what follows it, in turn)
    # (only when `parsed` came from this parameter, not from an RFC 5987 filename*)
    if (parsed == re.sub(r"\\(.)", r"\1", raw)
            and any(char not in '\\"' for char in escaped)):
        return raw
    return parsed
