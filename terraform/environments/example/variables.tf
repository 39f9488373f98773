variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-west-1"
}

variable "name" {
  description = "Environment name, prefix of every resource."
  type        = string
  default     = "logpipe-example"
}

variable "ami_id" {
  description = "Debian 12 AMI (e.g. the latest debian-12-amd64 of account 136693071363)."
  type        = string
}

variable "kafka_sha512" {
  description = "SHA-512 of the Kafka release tarball (its .sha512 file)."
  type        = string
}

variable "logpipe_release_url" {
  description = "URL of the logpipe release tarball (logpipe-* binaries at its top level)."
  type        = string
}

variable "logpipe_release_sha256" {
  description = "SHA-256 of the logpipe release tarball."
  type        = string
}

variable "schema_store_admin_password_hash" {
  description = "Argon2 hash of the schema store admin password (logpipe-schema-store hash-password)."
  type        = string
  sensitive   = true
}

variable "cep_admin_password_hash" {
  description = "Argon2 hash of the CEP rules API admin password (logpipe-schema-store hash-password)."
  type        = string
  sensitive   = true
}
