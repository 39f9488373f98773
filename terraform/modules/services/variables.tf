variable "name" {
  description = "Prefix of every resource name."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the services."
  type        = string
}

variable "vpc_cidr" {
  description = "Clients (agents' hosts, consumers, Prometheus) are admitted from this range only."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets for the instances and the internal load balancer."
  type        = list(string)
}

variable "ami_id" {
  description = "Debian 12 AMI for the service instances."
  type        = string
}

variable "instance_type" {
  description = "EC2 instance type of the service instances."
  type        = string
  default     = "m6i.large"
}

variable "write_bootstrap" {
  description = "Bootstrap servers of the write-side cluster (the mirror's source)."
  type        = string
}

variable "read_bootstrap" {
  description = "Bootstrap servers of the read-side cluster (mirror target, validator, CEP workers, lake loaders)."
  type        = string
}

variable "logpipe_release_url" {
  description = "URL of a tar.gz holding the logpipe-* release binaries at its top level."
  type        = string
}

variable "logpipe_release_sha256" {
  description = "SHA-256 of the release tarball."
  type        = string
}

variable "mirror_count" {
  description = "Mirror instances (shards are spread over them)."
  type        = number
  default     = 2
}

variable "validator_count" {
  description = "Validator instances (one consumer group)."
  type        = number
  default     = 2
}

variable "cep_count" {
  description = "CEP worker instances (one consumer group over the clean topics)."
  type        = number
  default     = 2
}

variable "lake_count" {
  description = "Lake loader instances (one consumer group per table, sharing its partitions)."
  type        = number
  default     = 2
}

variable "lake_tables_uri" {
  description = "s3://bucket/prefix under which the lake loaders keep their tables (<uri>/<table>)."
  type        = string
  validation {
    condition     = can(regex("^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9_.-]+)*$", var.lake_tables_uri))
    error_message = "An s3:// URI without a trailing '/': the loaders of several instances share each table, which a local disk cannot do."
  }
}

variable "lake_region" {
  description = "Region of the lake bucket (the loaders' AWS_REGION)."
  type        = string
}

variable "lake_policy_json" {
  description = "IAM policy of the lake loaders' role (read, write, list and delete under the tables' prefix)."
  type        = string
}

variable "schema_store_admin_password_hash" {
  description = "Argon2 PHC hash of the schema store's admin password (logpipe-schema-store hash-password)."
  type        = string
  sensitive   = true
}

variable "cep_admin_password_hash" {
  description = "Argon2 PHC hash of the CEP rules API's admin password (logpipe-schema-store hash-password)."
  type        = string
  sensitive   = true
}

variable "kms_key_arn" {
  description = "KMS key encrypting the instances' volumes."
  type        = string
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
