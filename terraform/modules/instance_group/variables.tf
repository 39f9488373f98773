variable "name" {
  description = "Name of the group and prefix of its launch template."
  type        = string
}

variable "size" {
  description = "Instances kept running (min = max = desired)."
  type        = number
}

variable "subnet_ids" {
  description = "Subnets the instances may be placed in."
  type        = list(string)
}

variable "ami_id" {
  description = "AMI of the instances."
  type        = string
}

variable "instance_type" {
  description = "EC2 instance type."
  type        = string
}

variable "security_group_ids" {
  description = "Security groups of the instances."
  type        = list(string)
}

variable "iam_policy_json" {
  description = "Inline IAM policy of the instances' role (used when attach_iam_policy is true)."
  type        = string
  default     = ""
}

variable "attach_iam_policy" {
  description = "Whether the instances' role gets iam_policy_json (a plan-time flag: the policy itself is often known only after apply)."
  type        = bool
  default     = false
}

variable "user_data" {
  description = "Boot script (plain text; encoded here)."
  type        = string
}

variable "root_volume_size_gb" {
  description = "Size of the encrypted root volume."
  type        = number
  default     = 20
}

variable "kms_key_arn" {
  description = "KMS key encrypting the root volume."
  type        = string
}

variable "target_group_arns" {
  description = "Load balancer target groups to register the instances with."
  type        = list(string)
  default     = []
}

variable "health_check_type" {
  description = "EC2, or ELB to replace instances the load balancer finds unhealthy."
  type        = string
  default     = "EC2"
}

variable "tags" {
  description = "Tags of the instances (and of the launch template)."
  type        = map(string)
  default     = {}
}
