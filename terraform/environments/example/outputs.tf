output "write_bootstrap" {
  description = "Bootstrap servers of the write-side cluster (agents' [kafka] bootstrap)."
  value       = module.kafka_write.bootstrap
}

output "read_bootstrap" {
  description = "Bootstrap servers of the read-side cluster (consumers of clean.* and dlq.*)."
  value       = module.kafka_read.bootstrap
}

output "lake_tables_uri" {
  description = "s3:// URI under which the lake loaders' Delta tables are (<uri>/<table>)."
  value       = module.lake_bucket.tables_uri
}

output "schema_store_url" {
  description = "URL of the schema store."
  value       = module.services.schema_store_url
}
