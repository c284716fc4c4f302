//! Replication service: view-driven primary election over `gcs`, applying commits through `storage`.
