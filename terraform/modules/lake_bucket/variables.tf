variable "bucket_name" {
  description = "Name of the bucket holding the Delta tables (globally unique)."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "An S3 bucket name: 3 to 63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit."
  }
}

variable "prefix" {
  description = "Key prefix of the tables (each table is <prefix>/<table>); the loaders' policy covers only this prefix."
  type        = string
  default     = "logpipe"
  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$", var.prefix))
    error_message = "Path segments of letters, digits, '_', '.' and '-' joined by '/', without a leading or trailing '/'."
  }
}

variable "kms_key_arn" {
  description = "KMS key encrypting the objects (SSE-KMS with a bucket key); the loaders' policy may use it."
  type        = string
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
