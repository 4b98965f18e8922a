"""What a request to the detection service may send, and the one file an upload stages (dfdtrain.inference.service).

The body limits (a JSON body at most ``MAX_JSON_BYTES``, at most ``MAX_FORM_FIELDS`` form fields besides the file,
``FORM_OVERHEAD`` bytes of boundaries and part headers on top of the file's), ``Refused`` (a request answered with a
4xx/5xx status and a one-line ``{"error": ...}``) and ``UploadParts``, the python-multipart callbacks that stream the
one file part to disk and refuse a second file, a file under another field name or too many fields as soon as that
part's headers arrive.
"""

import os
import re

MAX_JSON_BYTES = 64 * 1024  # a JSON request is {"path": ...}: a few hundred bytes
MAX_FORM_FIELDS = 16  # the page sends none; a client may add a few, not thousands
FORM_OVERHEAD = 64 * 1024  # an upload's bytes besides the file: boundaries, part headers, small fields


class Refused(Exception):
    """A request refused: its answer is ``status`` with the JSON {"error": message}."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


class UploadParts:
    """python-multipart callbacks that stage the one file part, the field ``file``, as ``folder``/upload<.ext>.

    A second file part, a file part under another name or more than MAX_FORM_FIELDS fields are refused (Refused)
    when that part's headers arrive, before anything of it is stored: a request can open one file, not one per
    part. Fields are counted and their values dropped. ``close()`` closes the staged file on every path."""

    def __init__(self, folder, max_bytes, max_mb):
        self.folder, self.max_bytes, self.max_mb = folder, max_bytes, max_mb
        self.name = self.path = self.file = None  # the client's file name, the staged path, its open file
        self.size = self.fields = 0
        self.writing = self.ended = False  # inside the file part's data; the closing boundary seen
        self.headers, self.header = {}, [b"", b""]  # this part's headers; the one being read (field, value)

    def callbacks(self):
        return {"on_part_begin": self.part_begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.part_data,
                "on_part_end": self.part_end, "on_end": self.end}

    def part_begin(self):
        self.headers, self.header = {}, [b"", b""]

    def header_field(self, data, start, end):  # a header may come in pieces across chunks
        self.header[0] += data[start:end]

    def header_value(self, data, start, end):
        self.header[1] += data[start:end]

    def header_end(self):
        self.headers[self.header[0].lower()] = self.header[1]
        self.header = [b"", b""]

    def headers_finished(self):
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        if b"filename" not in options:
            self.fields += 1
            if self.fields > MAX_FORM_FIELDS:
                raise Refused(400, f"too many form fields: at most {MAX_FORM_FIELDS} besides the file")
            return
        if self.file is not None:
            raise Refused(400, "one file per request: send the video as the one multipart field 'file'")
        if options.get(b"name") != b"file":
            raise Refused(400, "no file: send the video as the multipart field 'file'")
        self.name = os.path.basename(options[b"filename"].decode("utf-8", "replace")) or "upload"
        # staged as upload<.ext>: the probe reads an .mp4's boxes to tell a truncated file from a broken one
        suffix = os.path.splitext(self.name)[1].lower()
        self.path = self.folder / ("upload" + (suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""))
        self.file = open(self.path, "xb")
        self.writing = True

    def part_data(self, data, start, end):
        if not self.writing:
            return  # a field's value: not kept
        self.size += end - start
        if self.size > self.max_bytes:
            raise Refused(413, f"file too large: more than --max-mb {self.max_mb:g} MB")
        self.file.write(data[start:end])

    def part_end(self):
        self.writing = False

    def end(self):
        self.ended = True

    def close(self):
        if self.file is not None:
            self.file.close()
