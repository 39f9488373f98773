output "bootstrap" {
  description = "Bootstrap servers of the cluster (host:port, comma-separated)."
  value       = local.bootstrap
}

output "security_group_id" {
  description = "Security group of the brokers."
  value       = aws_security_group.broker.id
}
