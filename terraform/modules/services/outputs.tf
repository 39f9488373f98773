output "schema_store_url" {
  description = "URL of the schema store (internal load balancer)."
  value       = local.schema_store_url
}

output "security_group_id" {
  description = "Security group of the service instances."
  value       = aws_security_group.services.id
}
