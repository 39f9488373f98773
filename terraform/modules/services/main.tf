# The schema store behind an internal network load balancer, and the mirror, validator, CEP
# worker and lake loader groups. Every instance installs the release binaries, its config and the
# hardened systemd unit from deploy/systemd (the same files the Ansible roles install).
locals {
  schema_store_port = 8081
  schema_store_url  = "http://${aws_lb.schema_store.dns_name}:${local.schema_store_port}"
  systemd_dir       = "${path.module}/../../../deploy/systemd"

  # The local store is single-instance: one schema store, whose data volume follows it.
  services = {
    "schema-store" = {
      count   = 1
      subnets = [var.subnet_ids[0]]
      config = templatefile("${path.module}/configs/schema-store.toml.tftpl", {
        port          = local.schema_store_port
        password_hash = var.schema_store_admin_password_hash
      })
    }
    mirror = {
      count   = var.mirror_count
      subnets = var.subnet_ids
      config = templatefile("${path.module}/configs/mirror.toml.tftpl", {
        name   = var.name
        source = var.write_bootstrap
        target = var.read_bootstrap
      })
    }
    validator = {
      count   = var.validator_count
      subnets = var.subnet_ids
      config = templatefile("${path.module}/configs/validator.toml.tftpl", {
        schema_store = local.schema_store_url
        bootstrap    = var.read_bootstrap
      })
    }
    # Rules come over its HTTP API (port 9305, the telemetry listener), which needs the admin.
    cep = {
      count   = var.cep_count
      subnets = var.subnet_ids
      config = templatefile("${path.module}/configs/cep.toml.tftpl", {
        schema_store  = local.schema_store_url
        bootstrap     = var.read_bootstrap
        password_hash = var.cep_admin_password_hash
      })
    }
    # Tables on S3: the loaders of all instances share them (one consumer group per table).
    lake = {
      count   = var.lake_count
      subnets = var.subnet_ids
      config = templatefile("${path.module}/configs/lake.toml.tftpl", {
        schema_store = local.schema_store_url
        bootstrap    = var.read_bootstrap
        tables_uri   = var.lake_tables_uri
        region       = var.lake_region
      })
    }
  }

  # The instance roles' policies: the schema store attaches its volume, the lake loaders use
  # their bucket; the others need none.
  iam_policies = {
    "schema-store" = data.aws_iam_policy_document.attach.json
    lake           = var.lake_policy_json
  }
}

data "aws_subnet" "schema_store" {
  id = var.subnet_ids[0]
}

resource "aws_security_group" "services" {
  #checkov:skip=CKV2_AWS_5:Attached to every instance through module.service (instance_group's launch template); checkov does not follow a for_each module's arguments
  name        = "${var.name}-logpipe-services"
  description = "logpipe services: schema store API and telemetry from inside the VPC only"
  vpc_id      = var.vpc_id
  tags        = var.tags

  ingress {
    description = "Schema store API (clients and the load balancer's health checks)"
    from_port   = local.schema_store_port
    to_port     = local.schema_store_port
    protocol    = "tcp"
    cidr_blocks = [var.vpc_cidr]
  }

  ingress {
    description = "Telemetry: /metrics, /health, /ready; the CEP rules API (9305)"
    from_port   = 9301
    to_port     = 9306
    protocol    = "tcp"
    cidr_blocks = [var.vpc_cidr]
  }

  egress {
    description = "Kafka brokers and the schema store"
    from_port   = 8081
    to_port     = 9093
    protocol    = "tcp"
    cidr_blocks = [var.vpc_cidr]
  }

  egress {
    description = "Release downloads through the NAT gateways, AWS APIs, the lake's S3 bucket"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_ebs_volume" "schema_store" {
  availability_zone = data.aws_subnet.schema_store.availability_zone
  size              = 20
  type              = "gp3"
  encrypted         = true
  kms_key_id        = var.kms_key_arn
  tags              = merge(var.tags, { Name = "${var.name}-schema-store-data", LogpipeService = "schema-store" })
}

# Only the schema store may attach a volume, and only its own data volume.
data "aws_iam_policy_document" "attach" {
  statement {
    actions   = ["ec2:AttachVolume"]
    resources = [aws_ebs_volume.schema_store.arn, "arn:aws:ec2:*:*:instance/*"]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/LogpipeService"
      values   = ["schema-store"]
    }
  }
}

module "service" {
  source             = "../instance_group"
  for_each           = local.services
  name               = "${var.name}-${each.key}"
  size               = each.value.count
  subnet_ids         = each.value.subnets
  ami_id             = var.ami_id
  instance_type      = var.instance_type
  security_group_ids = [aws_security_group.services.id]
  attach_iam_policy  = contains(keys(local.iam_policies), each.key)
  iam_policy_json    = lookup(local.iam_policies, each.key, "")
  kms_key_arn        = var.kms_key_arn
  target_group_arns  = each.key == "schema-store" ? [aws_lb_target_group.schema_store.arn] : []
  health_check_type  = each.key == "schema-store" ? "ELB" : "EC2"
  tags               = merge(var.tags, { LogpipeService = each.key })
  user_data = templatefile("${path.module}/user_data.sh.tftpl", {
    service        = each.key
    config         = each.value.config
    unit           = file("${local.systemd_dir}/logpipe-${each.key}.service")
    hardening      = file("${local.systemd_dir}/logpipe-.service.d/10-hardening.conf")
    release_url    = var.logpipe_release_url
    release_sha256 = var.logpipe_release_sha256
    data_volume_id = each.key == "schema-store" ? aws_ebs_volume.schema_store.id : ""
    attach_volume  = file("${path.module}/../instance_group/attach-volume.sh")
  })
}

resource "aws_lb" "schema_store" {
  name                             = "${var.name}-schema-store"
  internal                         = true
  load_balancer_type               = "network"
  subnets                          = var.subnet_ids
  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = true
  tags                             = var.tags
  #checkov:skip=CKV_AWS_91:NLB access logs exist only for TLS listeners; this one is plain TCP inside the VPC and the VPC flow logs record its connections
}

resource "aws_lb_target_group" "schema_store" {
  name     = "${var.name}-schema-store"
  port     = local.schema_store_port
  protocol = "TCP"
  vpc_id   = var.vpc_id
  tags     = var.tags

  health_check {
    protocol = "HTTP"
    port     = "9304"
    path     = "/ready"
  }
}

resource "aws_lb_listener" "schema_store" {
  load_balancer_arn = aws_lb.schema_store.arn
  port              = local.schema_store_port
  protocol          = "TCP"
  tags              = var.tags

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.schema_store.arn
  }
}
