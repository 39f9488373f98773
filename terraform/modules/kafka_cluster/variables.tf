variable "name" {
  description = "Cluster name (write or read side), used in resource names and tags."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the cluster."
  type        = string
}

variable "vpc_cidr" {
  description = "Clients and peers are admitted from this range only."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets; brokers are spread over them round-robin."
  type        = list(string)
}

variable "broker_count" {
  description = "Brokers, each also a KRaft controller (combined mode). Odd, so the quorum has a majority."
  type        = number
  default     = 3
}

variable "cluster_id" {
  description = "KRaft cluster id: 22 base64url characters (kafka-storage.sh random-uuid)."
  type        = string
}

variable "ami_id" {
  description = "Debian 12 AMI for the brokers."
  type        = string
}

variable "instance_type" {
  description = "EC2 instance type of a broker."
  type        = string
  default     = "m6i.xlarge"
}

variable "data_volume_size_gb" {
  description = "Size of each broker's data volume (gp3)."
  type        = number
  default     = 500
}

variable "kafka_version" {
  description = "Apache Kafka release installed from the tarball."
  type        = string
  default     = "4.1.0"
}

variable "kafka_sha512" {
  description = "SHA-512 of the Kafka release tarball (from its .sha512 file)."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key encrypting the root and data volumes."
  type        = string
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
