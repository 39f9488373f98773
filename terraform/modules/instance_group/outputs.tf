output "autoscaling_group_name" {
  description = "Name of the auto-scaling group (for instance refreshes)."
  value       = aws_autoscaling_group.this.name
}
