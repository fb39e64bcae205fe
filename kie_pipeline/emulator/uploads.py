"""The emulator's File Upload API (Kie serves it at ``https://kieai.redpandaai.co``; here, on the same port).

- ``POST /api/file-stream-upload``: multipart ``file``, ``uploadPath``, ``fileName?``.
- ``POST /api/file-base64-upload``: JSON ``base64Data`` (raw or a ``data:...;base64,`` URL), ``uploadPath``,
  ``fileName?``.
- ``POST /api/file-url-upload``: JSON ``fileUrl`` (http/https, fetched with a 30 s timeout), ``uploadPath``,
  ``fileName?``.
- ``GET /tempfile/{uploadPath}/{fileName}``: the file (no auth), 404 once ``upload_retention`` has passed
  (Kie: 3 days).

Answers are shaped as Kie's endpoint pages show them: ``{success, code, msg, data{fileName, filePath,
downloadUrl, fileSize, mimeType, uploadedAt}}``; with ``upload_url_field="fileUrl"`` the URL comes as
``fileUrl`` instead, as in Kie's quickstart. Errors as documented: 400 for a missing parameter or an
``uploadPath`` with a leading or trailing slash, 401 for a bad key. A file uploaded again under the same
path and name replaces the earlier one; without ``fileName`` the name is random.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from .state import Emulator

#: Seconds Kie's file-url-upload waits for the remote file (kie-models.md section 7).
URL_UPLOAD_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class StoredUpload:
    """One uploaded file, held in memory."""

    data: bytes
    mime_type: str
    uploaded_mono: float
    uploaded_at: str


class UploadStore:
    """The uploaded files of an emulator (thread-safe), keyed by ``uploadPath/fileName``."""

    def __init__(self) -> None:
        self.files: dict[str, StoredUpload] = {}
        self.lock = threading.Lock()
        #: Successful uploads, their bytes, and files served.
        self.count = 0
        self.bytes = 0
        self.served = 0

    def put(self, path: str, data: bytes, mime_type: str) -> StoredUpload:
        stored = StoredUpload(data, mime_type, time.monotonic(), datetime.now(UTC).isoformat())
        with self.lock:
            self.files[path] = stored
            self.count += 1
            self.bytes += len(data)
        return stored

    def get(self, path: str, retention: float) -> StoredUpload | None:
        """The file, or None when unknown or deleted (``retention`` seconds after its upload)."""
        stored = self.files.get(path)
        if stored is None or time.monotonic() - stored.uploaded_mono > retention:
            return None
        with self.lock:
            self.served += 1
        return stored


class _Refused(Exception):
    def __init__(self, code: int, msg: str) -> None:
        self.code = code
        self.msg = msg
        super().__init__(msg)


def _answer(emu: Emulator, code: int, msg: str, data: Any = None) -> JSONResponse:
    status = code if code == 200 or emu.config.error_style == "http" else 200
    return JSONResponse({"success": code == 200, "code": code, "msg": msg, "data": data}, status_code=status)


def _required(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise _Refused(400, f"Missing required parameter: {name}")
    return value


def _upload_path(value: Any) -> str:
    path = _required(value, "uploadPath")
    if path != path.strip("/"):
        raise _Refused(400, "Invalid parameter: uploadPath must not start or end with '/'")
    return path


def _mime(file_name: str, declared: str | None) -> str:
    if declared and declared != "application/octet-stream":
        return declared
    return mimetypes.guess_type(file_name)[0] or declared or "application/octet-stream"


def _decode_base64(value: Any) -> tuple[bytes, str | None]:
    """The bytes of ``base64Data`` (raw base64 or a data URL) and the data URL's type, if any."""
    text = _required(value, "base64Data")
    declared = None
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        declared = header[5:].split(";", 1)[0] or None
    try:
        return base64.b64decode(text, validate=True), declared
    except (binascii.Error, ValueError):
        raise _Refused(400, "Invalid parameter: base64Data is not valid base64") from None


def upload_routes(emu: Emulator, authorized: Callable[[Emulator, Request], bool]) -> list[Route]:
    """The upload endpoints and the route that serves uploaded files."""

    def store(request: Request, path: str, name: str | None, data: bytes, declared: str | None) -> Response:
        file_name = name or f"{uuid.uuid4().hex}{mimetypes.guess_extension(declared or '') or ''}"
        mime = _mime(file_name, declared)
        key = f"{path}/{file_name}"
        stored = emu.uploads.put(key, data, mime)
        url = f"{str(request.base_url).rstrip('/')}/tempfile/{key}"
        field = "fileUrl" if emu.config.upload_url_field == "fileUrl" else "downloadUrl"
        return _answer(
            emu,
            200,
            "File uploaded successfully",
            {
                "fileName": file_name,
                "filePath": key,
                field: url,
                "fileSize": len(data),
                "mimeType": mime,
                "uploadedAt": stored.uploaded_at,
            },
        )

    async def stream_upload(request: Request) -> Response:
        if not authorized(emu, request):
            return _answer(emu, 401, "You do not have access permissions")
        try:
            async with request.form() as form:
                file = form.get("file")
                path = _upload_path(form.get("uploadPath"))
                if not isinstance(file, UploadFile):
                    raise _Refused(400, "Missing required parameter: file")
                data = await file.read()
                name = form.get("fileName")
                return store(request, path, name if isinstance(name, str) else None, data, file.content_type)
        except _Refused as exc:
            return _answer(emu, exc.code, exc.msg)
        except (ValueError, KeyError, HTTPException):  # not a (readable) multipart body
            return _answer(emu, 400, "Request body must be multipart/form-data with file and uploadPath")

    async def json_body(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise _Refused(400, "Request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _Refused(400, "Request body must be a JSON object")
        return body

    async def base64_upload(request: Request) -> Response:
        if not authorized(emu, request):
            return _answer(emu, 401, "You do not have access permissions")
        try:
            body = await json_body(request)
            data, declared = _decode_base64(body.get("base64Data"))
            path = _upload_path(body.get("uploadPath"))
            return store(request, path, body.get("fileName") or None, data, declared)
        except _Refused as exc:
            return _answer(emu, exc.code, exc.msg)

    async def url_upload(request: Request) -> Response:
        if not authorized(emu, request):
            return _answer(emu, 401, "You do not have access permissions")
        try:
            body = await json_body(request)
            url = _required(body.get("fileUrl"), "fileUrl")
            path = _upload_path(body.get("uploadPath"))
            if not url.startswith(("http://", "https://")):
                raise _Refused(400, "Invalid parameter: fileUrl must be an http or https URL")
            try:
                async with httpx.AsyncClient(timeout=URL_UPLOAD_TIMEOUT_S, follow_redirects=True) as http:
                    got = await http.get(url)
            except httpx.HTTPError:
                raise _Refused(500, "Failed to download the file from fileUrl") from None
            if got.status_code != 200:
                raise _Refused(400, f"fileUrl answered HTTP {got.status_code}")
            name = body.get("fileName") or url.rsplit("/", 1)[-1].split("?", 1)[0] or None
            declared = (got.headers.get("content-type") or "").split(";")[0] or None
            return store(request, path, name, got.content, declared)
        except _Refused as exc:
            return _answer(emu, exc.code, exc.msg)

    async def tempfile(request: Request) -> Response:
        stored = emu.uploads.get(request.path_params["path"], emu.config.upload_retention)
        if stored is None:
            return Response("Not Found", status_code=404, media_type="text/plain")
        return Response(stored.data, media_type=stored.mime_type)

    return [
        Route("/api/file-stream-upload", stream_upload, methods=["POST"]),
        Route("/api/file-base64-upload", base64_upload, methods=["POST"]),
        Route("/api/file-url-upload", url_upload, methods=["POST"]),
        Route("/tempfile/{path:path}", tempfile, methods=["GET"]),
    ]
