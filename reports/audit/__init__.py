"""The audit: metrics and their registry, flags and verdicts, the --fail-on gate, agreement between
methods, focus on artefacts, subgroups, great-expectations validation, and the audit stage
(`stage.audit_slide`) that writes audit.json."""
