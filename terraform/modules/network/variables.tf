variable "name" {
  description = "Prefix of every resource name."
  type        = string
}

variable "cidr_block" {
  description = "CIDR of the VPC; split into private /20 and public /24 subnets, one each per zone."
  type        = string
  default     = "10.40.0.0/16"
}

variable "availability_zones" {
  description = "The 3 availability zones to spread the subnets over (e.g. eu-west-1a, eu-west-1b, eu-west-1c)."
  type        = list(string)
  validation {
    condition     = length(var.availability_zones) == 3
    error_message = "Give exactly 3 availability zones."
  }
}

variable "kms_key_arn" {
  description = "KMS key encrypting the flow log group."
  type        = string
}

variable "flow_log_retention_days" {
  description = "How long VPC flow logs are kept."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
