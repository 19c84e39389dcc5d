"""Bulk import of bags and bills from CSV or XLSX files.

A file is read as a stream (CSV with the ``csv`` module, XLSX with openpyxl
in read-only mode) and its first row names the columns, in any order:

- bags: ``qr, kind, area, parent``. ``kind`` is ``parent`` or ``child``. A
  parent names its dispatch area. A child may name its parent (a parent
  already in bagtrack, or one on any row of the same file, before or after
  it) and then takes the parent's area; a child without a parent is loose
  and names its area.
- bills: ``bill_no, capacity, destination, vehicle_no, description, status,
  parents``. ``status`` is ``open`` (the default) or ``closed``; ``parents``
  lists parent codes already in bagtrack, separated by spaces, commas or
  semicolons, to load onto the bill.

Every value is normalised exactly as a scan or a form is (``bagtrack.codes``,
the bill form's field rules) and each row obeys the rules of the scanner and
of the bill office. A row that breaks one is not imported: it is reported
with its row number (the header is row 1, as a spreadsheet counts), a code
and a sentence. The other rows are imported together, in one transaction.

Rows are checked in Python one by one as they stream in, staged in a
temporary table in chunks (through the bulk writers of ``bagtrack.bulk``: ``COPY`` on
PostgreSQL from the command line, multi-row ``INSERT`` under gevent), then
checked against the file and the database with set-based SQL, so memory
stays flat whatever the size. What an import creates is
written already consistent: counters, the scan rows of the parents created,
the children linked and the parents loaded (by the importing admin, or by
no user from the command line), and the dashboard tally. While the checks
and writes run, bags (and bills) are locked against other writers: big
imports belong to a quiet moment on the floor.
"""

from .files import EXTENSIONS, FileLimits, file_extension
from .run import SHOWN_REFUSALS, ImportReport, RowRefusal, import_bags, import_bills

__all__ = [
    "EXTENSIONS",
    "SHOWN_REFUSALS",
    "FileLimits",
    "ImportReport",
    "RowRefusal",
    "file_extension",
    "import_bags",
    "import_bills",
]
