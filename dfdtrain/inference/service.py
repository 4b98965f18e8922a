"""A detection service around one loaded detector: an HTTP API and a web page (``dfdtrain serve``).

    app = create_app("runs/exp1", faces="mtcnn")     # a FastAPI app, to mount in your own server
    uvicorn.run(app, host="127.0.0.1", port=8000)    # what `dfdtrain serve` does

Endpoints:
  POST /api/predict   multipart field ``file`` (or JSON ``{"path": ...}`` when started with ``allow_paths``): the
                      object ``dfdtrain predict --json`` prints for that file, plus ``crops`` (the face crops the
                      model saw, as JPEG data URLs) with ``?crops=1``, plus ``explain`` (a Grad-CAM map per crop of
                      what drove the fake score, as PNG data URLs in ``explain.maps``, or ``explain.note`` when
                      the model has none: Predictor.predict) with ``?explain=1``; or a 4xx ``{"error": ...}`` for
                      bad input
  GET  /api/model     backbone, head, input settings, threshold, calibration, the scale of each score field,
                      training run name, limits
  GET  /healthz       {"status": "ok", "queued": n}
  GET  /              the page: pick or drop a video; the verdict, P(fake), per-frame scores and the crops, all
                      on the verdict's scale (calibrated when the detector has a calibration; raw labelled raw)

The model runs in one worker thread that takes up to ``batch_size`` waiting requests at a time into one batched
forward pass (``Predictor.predict``: the same clip, calibration and threshold as ``dfdtrain predict``). The queue is
bounded (503 when full) and each request waits at most ``timeout`` seconds (504).

Every request is bounded, and whatever it leaves behind is closed and deleted on every path (refusal, parse error,
disconnect, timeout):
  bytes   an upload's file at most ``max_mb`` MB, a JSON body at most 64 KB: 413, by Content-Length before reading
          and while streaming
  parts   one file part (the field ``file``) and at most 16 other form fields: 400 as soon as the part's headers
          arrive, before anything of it is stored (so one request can open one file, not one per part)
  time    the body must arrive within ``body_timeout`` seconds (408), the result within ``timeout`` (504)
Every error answer closes the connection: one sent before the body was read to its end stops the client sending.
Uploads stream into a private folder under ``upload_dir`` (dfdtrain.inference.uploads); error messages are one
line and quote at most a short, escaped prefix of a client-given path.
"""

import asyncio
import concurrent.futures
import json
import math
import os
import queue
import shutil
import tempfile
import threading
from pathlib import Path

from dfdtrain.config import config_to_dict
from dfdtrain.core.errors import DfdError, one_line
from dfdtrain.inference.uploads import FORM_OVERHEAD, MAX_FORM_FIELDS, MAX_JSON_BYTES, Refused, UploadParts

DEFAULT_MAX_MB = 200
DEFAULT_TIMEOUT = 120.0
DEFAULT_QUEUE = 32
DEFAULT_BODY_TIMEOUT = 60.0
MAX_ERROR_CHARS = 300


class Job:
    """One video waiting for the model: its path, whether crops and maps are wanted, the future its request awaits."""

    def __init__(self, path, crops, explain=False):
        self.path, self.crops, self.explain = path, crops, explain
        self.future = concurrent.futures.Future()


class ModelWorker:
    """The one thread that runs the detector: it takes up to ``batch_size`` queued jobs at a time (concurrent
    requests share a forward pass) from a queue of at most ``queue_size``."""

    def __init__(self, predictor, queue_size=DEFAULT_QUEUE, batch_size=4):
        self.predictor, self.batch_size = predictor, batch_size
        self.jobs = queue.Queue(maxsize=queue_size)
        self.thread = threading.Thread(target=self._run, name="dfdtrain-serve-model", daemon=True)
        self.thread.start()

    def submit(self, path, crops=False, explain=False):
        """The job's future; raises queue.Full when ``queue_size`` jobs are already waiting."""
        job = Job(path, crops, explain)
        self.jobs.put_nowait(job)
        return job.future

    def queued(self):
        return self.jobs.qsize()

    def stop(self):
        self.jobs.put(None)
        self.thread.join(timeout=30)

    def _take_batch(self):
        first = self.jobs.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < self.batch_size:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:  # stop after this batch
                self.jobs.put(None)
                break
            batch.append(job)
        return [job for job in batch if job.future.set_running_or_notify_cancel()]  # timed out while queued: gone

    def _run(self):
        while (batch := self._take_batch()) is not None:
            if not batch:
                continue
            try:
                results = self.predictor.predict([job.path for job in batch],
                                                 crops=any(job.crops for job in batch),
                                                 explain=any(job.explain for job in batch))
            except Exception as error:  # noqa: BLE001 (a model failure fails these requests, not the service)
                for job in batch:
                    job.future.set_exception(error)
                continue
            for job, result in zip(batch, results):
                if not job.crops:
                    result.pop("crops", None)
                if not job.explain:
                    result.pop("explain", None)
                job.future.set_result(result)




def shown(text, limit=60):
    """A client-given string as an error message may quote it: a short prefix, escaped (one line, no markup)."""
    return ascii(text[:limit]) + ("..." if len(text) > limit else "")


def model_info(predictor, name, limits):
    """GET /api/model: what the service runs."""
    settings = predictor.settings
    return {"name": settings.name, "backbone": settings.model.backbone, "head": settings.model.head,
            "checkpoint": name, "clip": config_to_dict(predictor.clip), "threshold": predictor.threshold,
            "calibration": config_to_dict(settings.calibration), "faces": predictor.faces,
            "device": str(predictor.device), "scores": predictor.scores_key, "scales": predictor.scales(),
            "limits": limits}


def _inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def check_limits(max_mb, timeout, body_timeout, queue_size, batch_size):
    """DfdError unless the float limits are finite and > 0 (nan would disable a limit, inf overflow) and the
    counts >= 1."""
    for name, value in (("max_mb", max_mb), ("timeout", timeout), ("body_timeout", body_timeout)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise DfdError(f"{name} must be a finite number > 0, not {value!r}")
    if queue_size < 1 or batch_size < 1:
        raise DfdError("queue_size and batch_size must be >= 1")


def create_app(checkpoint, device="cpu", faces="mtcnn", max_mb=DEFAULT_MAX_MB, timeout=DEFAULT_TIMEOUT,
               queue_size=DEFAULT_QUEUE, batch_size=4, allow_paths=None, upload_dir=None, predictor=None,
               body_timeout=DEFAULT_BODY_TIMEOUT, base_weights=None):
    """The FastAPI app of a detection service for ``checkpoint`` (run directory, checkpoint folder or bundle);
    the model is loaded once, here. ``allow_paths``: a folder whose files JSON ``{"path"}`` requests may name
    (none: uploads only). ``upload_dir``: where uploads are staged (default: a new temporary folder).
    ``body_timeout``: seconds a request's body may take to arrive."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from python_multipart.multipart import MultipartParser, parse_options_header
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    from dfdtrain.inference.predict import Predictor
    from dfdtrain.inference.page import PAGE

    check_limits(max_mb, timeout, body_timeout, queue_size, batch_size)
    if allow_paths is not None and not Path(allow_paths).is_dir():
        raise DfdError(f"{allow_paths}: --allow-paths must be a folder")
    predictor = predictor or Predictor(checkpoint, device=device, faces=faces, batch_size=batch_size, progress=False,
                                       base_weights=base_weights)
    owned_upload_dir = upload_dir is None
    upload_dir = Path(tempfile.mkdtemp(prefix="dfdtrain-uploads-") if owned_upload_dir else upload_dir)
    upload_dir.mkdir(parents=True, exist_ok=True)
    max_bytes = int(max_mb * 1024 * 1024)
    limits = {"max_mb": max_mb, "timeout_s": timeout, "body_timeout_s": body_timeout, "queue": queue_size,
              "batch_size": batch_size, "max_json_bytes": MAX_JSON_BYTES, "max_form_fields": MAX_FORM_FIELDS,
              "allow_paths": str(allow_paths) if allow_paths else None}
    worker = ModelWorker(predictor, queue_size, batch_size)

    async def lifespan(app):
        yield
        worker.stop()
        if owned_upload_dir:
            shutil.rmtree(upload_dir, ignore_errors=True)

    app = FastAPI(title="dfdtrain detector", lifespan=lifespan)
    app.state.worker, app.state.upload_dir = worker, upload_dir

    def error(status, message):
        message = one_line(message, MAX_ERROR_CHARS)
        # an error may come before the body was read to its end; closing the connection stops the client from
        # sending the rest (uvicorn would otherwise read and drop it for as long as it comes)
        return JSONResponse({"error": message}, status_code=status, headers={"Connection": "close"})

    @app.exception_handler(HTTPException)
    async def http_error(request, exception):
        return error(exception.status_code, exception.detail)

    @app.exception_handler(Refused)
    async def refused(request, exception):
        return error(exception.status, exception.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exception):
        return error(400, f"bad request: {exception.errors()[0].get('msg', 'invalid input')}")

    @app.exception_handler(Exception)
    async def internal_error(request, exception):  # a fault of the service, not of the input: still JSON
        return error(500, f"internal error: {type(exception).__name__}: {exception}")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "queued": worker.queued()}

    @app.get("/api/model")
    async def api_model():
        return model_info(predictor, str(checkpoint), limits)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE

    async def body_chunks(request, limit, too_large):
        """The request body chunk by chunk; Refused(413, too_large) once it is known to exceed ``limit`` bytes:
        by its Content-Length before anything is read, else while it streams in."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise Refused(413, too_large)
        received = 0
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise Refused(413, too_large)
                yield chunk
        except ClientDisconnect:
            raise Refused(400, "the client disconnected before the end of the body") from None

    async def receive_upload(request, folder):
        """Stream the multipart body into ``folder``: (client file name, staged path)."""
        kind, options = parse_options_header(request.headers.get("content-type"))
        if kind != b"multipart/form-data" or not options.get(b"boundary"):
            raise Refused(400, "send the video as the multipart/form-data field 'file' (or JSON {\"path\": ...})")
        parts = UploadParts(folder, max_bytes, max_mb)
        try:
            parser = MultipartParser(options[b"boundary"], parts.callbacks())
            async for chunk in body_chunks(request, max_bytes + FORM_OVERHEAD,
                                           f"file too large: more than --max-mb {max_mb:g} MB"):
                parser.write(chunk)
        except ValueError as problem:  # python-multipart's parse errors (FormParserError is a ValueError)
            raise Refused(400, f"bad multipart request ({type(problem).__name__}: {problem})") from None
        finally:
            parts.close()  # on every path: a refused or broken upload must not keep its file open
        if not parts.ended:
            raise Refused(400, "bad multipart request: the body ends before its closing boundary")
        if parts.path is None:
            raise Refused(400, "no file: send the video as the multipart field 'file'")
        return parts.name, str(parts.path)

    async def receive_json(request):
        body = b"".join([chunk async for chunk in body_chunks(
            request, MAX_JSON_BYTES, f"JSON body too large: more than {MAX_JSON_BYTES // 1024} KB")])
        try:
            return json.loads(body)
        except RecursionError:  # nested deeper than Python's stack: the client's doing, not the service's
            raise Refused(400, "the JSON body is nested too deeply") from None
        except ValueError:
            raise Refused(400, "the JSON body is not valid JSON") from None

    async def within_body_deadline(reading):
        """``await reading`` (a coroutine that reads the body), Refused(408) after ``body_timeout`` seconds: a
        trickling client cannot hold a connection (and a staged file) for ever. wait_for cancels ``reading`` and
        waits for it, so its cleanup has run when the 408 goes out."""
        try:
            return await asyncio.wait_for(reading, body_timeout)
        except asyncio.TimeoutError:
            raise Refused(408, f"the request body took longer than --body-timeout {body_timeout:g} s") from None

    async def json_path(request):
        return allowed_path(await receive_json(request))

    def allowed_path(body):
        if allow_paths is None:
            raise Refused(400, "JSON path requests need the service started with --allow-paths DIR; "
                                     "upload the file as the multipart field 'file'")
        if not isinstance(body, dict) or not isinstance(body.get("path"), str) or not body["path"]:
            raise Refused(400, 'a JSON request is {"path": "FILE"}')
        name = body["path"]
        path = os.path.join(allow_paths, name)  # an absolute path stays as it is
        try:
            inside, found = _inside(path, allow_paths), os.path.isfile(path)
        except ValueError:  # a NUL byte or a lone surrogate: no file can have that name
            raise Refused(400, f"{shown(name)}: not a valid path") from None
        if not inside:
            raise Refused(403, f"{shown(name)}: outside --allow-paths {allow_paths}")
        if not found:
            raise Refused(404, f"{shown(name)}: no such file")
        return name, os.path.realpath(path)

    async def run_model(path, crops, folder, explain=False):
        """The predictor's result for ``path``; deletes ``folder`` (the upload) when the model is done with it,
        even after the request timed out."""
        try:
            future = worker.submit(path, crops, explain)
        except queue.Full:
            raise Refused(503, f"busy: {worker.queued()} requests are waiting; try again") from None
        if folder is not None:
            future.add_done_callback(lambda _: shutil.rmtree(folder, ignore_errors=True))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except asyncio.TimeoutError:
            future.cancel()  # still queued: dropped; already running: it finishes, then the upload goes
            raise Refused(504, f"timed out after {timeout:g} s") from None

    @app.post("/api/predict")
    async def api_predict(request: Request, crops: bool = False, explain: bool = False):
        is_json = request.headers.get("content-type", "").lower().startswith("application/json")
        folder = None if is_json else Path(tempfile.mkdtemp(dir=upload_dir))
        try:
            name, path = await within_body_deadline(json_path(request) if is_json else
                                                    receive_upload(request, folder))
            result = await run_model(path, crops, folder, explain)
            folder = None  # the model's done-callback removed it
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        result = {**result, "path": name}
        if "error" in result:
            return JSONResponse({"error": result["error"].replace(path, name), "path": name}, status_code=422)
        return result

    return app


def serve(checkpoint, host="127.0.0.1", port=8000, **options):
    """Run the service with uvicorn until interrupted (``dfdtrain serve``)."""
    import uvicorn

    app = create_app(checkpoint, **options)
    print(f"dfdtrain serve: {checkpoint} on http://{host}:{port}/ (API: POST /api/predict, GET /api/model)",
          flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
