"""``featurecache audit``: what the cached features say about the data set and the heads.

From the cache alone (no backbone run): exact and near-duplicates within and across
splits and the leak of test images into train (:mod:`~featurecache.auditing.duplicates`,
over :mod:`~featurecache.auditing.neighbours`), likely label errors by cleanlab and outliers
(:mod:`~featurecache.auditing.labels`), the trained heads' test mistakes and their top-1
without the leak (:mod:`~featurecache.auditing.mistakes`), shown on a page with thumbnails
read from the sources (:mod:`~featurecache.auditing.thumbs`), a 2-D map
(:mod:`~featurecache.auditing.maps`), ``audit.json`` and CSVs
(:mod:`~featurecache.auditing.write`, :mod:`~featurecache.auditing.page`). The stage is
:func:`~featurecache.auditing.run.audit_pipeline`.
"""

from featurecache.auditing.run import AuditResult, audit_features, audit_pipeline, check_audit

__all__ = ["AuditResult", "audit_features", "audit_pipeline", "check_audit"]
