"""A detection service around one loaded detector: an HTTP API and a web page (``dfdtrain serve``).

    app = create_app("runs/exp1", faces="mtcnn")     # a FastAPI app, to mount in your own server
    uvicorn.run(app, host="127.0.0.1", port=8000)    # what `dfdtrain serve` does

Endpoints:
  POST /api/predict   multipart field ``file`` (or JSON ``{"path": ...}`` when started with ``allow_paths``): the
                      object ``dfdtrain predict --json`` prints for that file, plus ``crops`` (the face crops the
                      model saw, as JPEG data URLs) with ``?crops=1``; or a 4xx ``{"error": ...}`` for bad input
  GET  /api/model     backbone, head, input settings, threshold, calibration, training run name, limits
  GET  /healthz       {"status": "ok", "queued": n}
  GET  /              the page: pick or drop a video; the verdict, P(fake), per-frame scores and the crops

The model runs in one worker thread that takes up to ``batch_size`` waiting requests at a time into one batched
forward pass (``Predictor.predict``: the same clip, calibration and threshold as ``dfdtrain predict``). The queue is
bounded (503 when full) and each request waits at most ``timeout`` seconds (504). Uploads stream into a private
folder under ``upload_dir`` with a size limit (413) and are deleted whatever happens, timeouts included.
"""

import asyncio
import concurrent.futures
import json
import os
import queue
import re
import shutil
import tempfile
import threading
from pathlib import Path

from dfdtrain.config import config_to_dict
from dfdtrain.errors import DfdError

DEFAULT_MAX_MB = 200
DEFAULT_TIMEOUT = 120.0
DEFAULT_QUEUE = 32


class Job:
    """One video waiting for the model: its path, whether crops are wanted, and the future its request awaits."""

    def __init__(self, path, crops):
        self.path, self.crops = path, crops
        self.future = concurrent.futures.Future()


class ModelWorker:
    """The one thread that runs the detector: it takes up to ``batch_size`` queued jobs at a time (concurrent
    requests share a forward pass) from a queue of at most ``queue_size``."""

    def __init__(self, predictor, queue_size=DEFAULT_QUEUE, batch_size=4):
        self.predictor, self.batch_size = predictor, batch_size
        self.jobs = queue.Queue(maxsize=queue_size)
        self.thread = threading.Thread(target=self._run, name="dfdtrain-serve-model", daemon=True)
        self.thread.start()

    def submit(self, path, crops=False):
        """The job's future; raises queue.Full when ``queue_size`` jobs are already waiting."""
        job = Job(path, crops)
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
                                                 crops=any(job.crops for job in batch))
            except Exception as error:  # noqa: BLE001 (a model failure fails these requests, not the service)
                for job in batch:
                    job.future.set_exception(error)
                continue
            for job, result in zip(batch, results):
                if not job.crops:
                    result.pop("crops", None)
                job.future.set_result(result)


def model_info(predictor, name, limits):
    """GET /api/model: what the service runs."""
    settings = predictor.settings
    return {"name": settings.name, "backbone": settings.model.backbone, "head": settings.model.head,
            "checkpoint": name, "clip": config_to_dict(predictor.clip), "threshold": predictor.threshold,
            "calibration": config_to_dict(settings.calibration), "faces": predictor.faces,
            "device": str(predictor.device), "scores": predictor.scores_key, "limits": limits}


def _inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def create_app(checkpoint, device="cpu", faces="mtcnn", max_mb=DEFAULT_MAX_MB, timeout=DEFAULT_TIMEOUT,
               queue_size=DEFAULT_QUEUE, batch_size=4, allow_paths=None, upload_dir=None, predictor=None):
    """The FastAPI app of a detection service for ``checkpoint`` (run directory, checkpoint folder or bundle);
    the model is loaded once, here. ``allow_paths``: a folder whose files JSON ``{"path"}`` requests may name
    (none: uploads only). ``upload_dir``: where uploads are staged (default: a new temporary folder)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from python_multipart.multipart import create_form_parser
    from starlette.exceptions import HTTPException

    from dfdtrain.predict import Predictor
    from dfdtrain.serve_page import PAGE

    if max_mb <= 0 or timeout <= 0 or queue_size < 1 or batch_size < 1:
        raise DfdError("max_mb and timeout must be > 0, queue_size and batch_size >= 1")
    if allow_paths is not None and not Path(allow_paths).is_dir():
        raise DfdError(f"{allow_paths}: --allow-paths must be a folder")
    predictor = predictor or Predictor(checkpoint, device=device, faces=faces, batch_size=batch_size, progress=False)
    owned_upload_dir = upload_dir is None
    upload_dir = Path(tempfile.mkdtemp(prefix="dfdtrain-uploads-") if owned_upload_dir else upload_dir)
    upload_dir.mkdir(parents=True, exist_ok=True)
    max_bytes = int(max_mb * 1024 * 1024)
    limits = {"max_mb": max_mb, "timeout_s": timeout, "queue": queue_size, "batch_size": batch_size,
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
        return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)

    @app.exception_handler(HTTPException)
    async def http_error(request, exception):
        return error(exception.status_code, exception.detail)

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

    async def receive_upload(request, folder):
        """Stream the multipart body into ``folder`` (at most max_bytes); (client file name, staged path)."""
        files = []
        try:
            parser = create_form_parser({"Content-Type": request.headers["content-type"].encode("latin-1")},
                                        None, files.append,
                                        config={"UPLOAD_DIR": str(folder), "MAX_MEMORY_FILE_SIZE": 0,
                                                "UPLOAD_DELETE_TMP": False})
        except (ValueError, KeyError) as problem:
            raise HTTPException(400, f"bad multipart request ({problem})") from None
        received = 0
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > max_bytes + 64 * 1024:  # the form's own bytes besides the file are small
                    raise HTTPException(413, f"file too large: more than --max-mb {max_mb:g} MB")
                parser.write(chunk)
            parser.finalize()
        except HTTPException:
            raise
        except Exception as problem:  # noqa: BLE001 (python-multipart's parse errors)
            raise HTTPException(400, f"bad multipart request ({type(problem).__name__}: {problem})") from None
        uploads = [item for item in files if item.field_name == b"file"]
        for item in files:
            if item.in_memory:
                item.flush_to_disk()
            item.close()
        if not uploads:
            raise HTTPException(400, "no file: send the video as the multipart field 'file'")
        if uploads[0].size > max_bytes:
            raise HTTPException(413, f"file too large: more than --max-mb {max_mb:g} MB")
        name = os.path.basename((uploads[0].file_name or b"upload").decode("utf-8", "replace")) or "upload"
        # staged as upload<.ext>: the probe reads an .mp4's boxes to tell a truncated file from a broken one
        suffix = os.path.splitext(name)[1].lower()
        staged = folder / ("upload" + (suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""))
        os.replace(os.fsdecode(uploads[0].actual_file_name), staged)
        return name, str(staged)

    def allowed_path(body):
        if allow_paths is None:
            raise HTTPException(400, "JSON path requests need the service started with --allow-paths DIR; "
                                     "upload the file as the multipart field 'file'")
        if not isinstance(body, dict) or not isinstance(body.get("path"), str) or not body["path"]:
            raise HTTPException(400, 'a JSON request is {"path": "FILE"}')
        path = os.path.join(allow_paths, body["path"])  # an absolute path stays as it is
        if not _inside(path, allow_paths):
            raise HTTPException(403, f"{body['path']}: outside --allow-paths {allow_paths}")
        if not os.path.isfile(path):
            raise HTTPException(404, f"{body['path']}: no such file")
        return body["path"], os.path.realpath(path)

    async def run_model(path, crops, folder):
        """The predictor's result for ``path``; deletes ``folder`` (the upload) when the model is done with it,
        even after the request timed out."""
        try:
            future = worker.submit(path, crops)
        except queue.Full:
            raise HTTPException(503, f"busy: {worker.queued()} requests are waiting; try again") from None
        if folder is not None:
            future.add_done_callback(lambda _: shutil.rmtree(folder, ignore_errors=True))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except asyncio.TimeoutError:
            future.cancel()  # still queued: dropped; already running: it finishes, then the upload goes
            raise HTTPException(504, f"timed out after {timeout:g} s") from None

    @app.post("/api/predict")
    async def api_predict(request: Request, crops: bool = False):
        folder = None
        try:
            if request.headers.get("content-type", "").startswith("application/json"):
                try:
                    body = json.loads(await request.body())
                except ValueError:
                    raise HTTPException(400, "the JSON body is not valid JSON") from None
                name, path = allowed_path(body)
            else:
                folder = Path(tempfile.mkdtemp(dir=upload_dir))
                name, path = await receive_upload(request, folder)
            result = await run_model(path, crops, folder)
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
