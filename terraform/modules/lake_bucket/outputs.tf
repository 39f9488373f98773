output "bucket_name" {
  description = "Name of the tables' bucket."
  value       = aws_s3_bucket.this.id
}

output "bucket_arn" {
  description = "ARN of the tables' bucket."
  value       = aws_s3_bucket.this.arn
}

output "region" {
  description = "Region of the bucket (the loaders' AWS_REGION)."
  value       = aws_s3_bucket.this.region
}

output "tables_uri" {
  description = "s3:// URI under which each table is <tables_uri>/<table>."
  value       = "s3://${aws_s3_bucket.this.id}/${var.prefix}"
}

output "loader_policy_json" {
  description = "IAM policy for the loaders' role: list, read, write and delete objects under the prefix, and use the key."
  value       = data.aws_iam_policy_document.loader.json
}
