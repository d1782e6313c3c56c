"""Shared plumbing every stage uses: settings (`config`), the lake layout (`lake`), local/S3
storage (`storage`), the data contracts (`schemas`) and UTC data intervals (`intervals`)."""
