# An example environment: one VPC, a write-side and a read-side Kafka cluster, the services, and
# the lake loaders' bucket.
data "aws_caller_identity" "current" {}

# One key for every volume, log group and the lake bucket of the environment, rotated yearly.
data "aws_iam_policy_document" "kms" {
  # checkov:skip=CKV_AWS_109:A key policy must name its own key as "*"; access is limited to this account's principals
  # checkov:skip=CKV_AWS_111:A key policy must name its own key as "*"; access is limited to this account's principals
  # checkov:skip=CKV_AWS_356:A key policy must name its own key as "*"; access is limited to this account's principals
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:aws:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
  statement {
    sid       = "CloudWatchLogsEncrypt"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "${var.name}: EBS volumes, log groups and the lake bucket"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

module "network" {
  source             = "../../modules/network"
  name               = var.name
  availability_zones = ["${var.region}a", "${var.region}b", "${var.region}c"]
  kms_key_arn        = aws_kms_key.this.arn
}

module "kafka_write" {
  source       = "../../modules/kafka_cluster"
  name         = "${var.name}-write"
  vpc_id       = module.network.vpc_id
  vpc_cidr     = module.network.vpc_cidr
  subnet_ids   = module.network.private_subnet_ids
  cluster_id   = "bG9ncGlwZS13cml0ZS0wMQ"
  ami_id       = var.ami_id
  kafka_sha512 = var.kafka_sha512
  kms_key_arn  = aws_kms_key.this.arn
}

# Readers (batch jobs, replays) get bigger brokers than the write side.
module "kafka_read" {
  source        = "../../modules/kafka_cluster"
  name          = "${var.name}-read"
  vpc_id        = module.network.vpc_id
  vpc_cidr      = module.network.vpc_cidr
  subnet_ids    = module.network.private_subnet_ids
  cluster_id    = "bG9ncGlwZS1yZWFkLS0wMQ"
  ami_id        = var.ami_id
  instance_type = "m6i.2xlarge"
  kafka_sha512  = var.kafka_sha512
  kms_key_arn   = aws_kms_key.this.arn
}

# The loaders' Delta tables; outside readers (Athena, Spark, ...) need read access to it and the key.
module "lake_bucket" {
  source      = "../../modules/lake_bucket"
  bucket_name = "${var.name}-lake"
  kms_key_arn = aws_kms_key.this.arn
}

module "services" {
  source                           = "../../modules/services"
  name                             = var.name
  vpc_id                           = module.network.vpc_id
  vpc_cidr                         = module.network.vpc_cidr
  subnet_ids                       = module.network.private_subnet_ids
  ami_id                           = var.ami_id
  write_bootstrap                  = module.kafka_write.bootstrap
  read_bootstrap                   = module.kafka_read.bootstrap
  logpipe_release_url              = var.logpipe_release_url
  logpipe_release_sha256           = var.logpipe_release_sha256
  schema_store_admin_password_hash = var.schema_store_admin_password_hash
  cep_admin_password_hash          = var.cep_admin_password_hash
  lake_tables_uri                  = module.lake_bucket.tables_uri
  lake_region                      = module.lake_bucket.region
  lake_policy_json                 = module.lake_bucket.loader_policy_json
  kms_key_arn                      = aws_kms_key.this.arn
}
