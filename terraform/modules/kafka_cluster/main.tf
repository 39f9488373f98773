# A KRaft cluster of EC2 brokers. Each broker is an auto-scaling group of exactly one instance
# that owns a fixed network interface (stable address, so the quorum voters never change) and an
# encrypted EBS data volume in its zone: a replaced instance attaches both at boot and comes back
# as the same node with its data, instead of a new node that must re-replicate everything.
data "aws_subnet" "broker" {
  count = var.broker_count
  id    = var.subnet_ids[count.index % length(var.subnet_ids)]
}

locals {
  port            = 9092
  controller_port = 9093
  voters          = join(",", [for i, eni in aws_network_interface.broker : "${i + 1}@${eni.private_ip}:${local.controller_port}"])
  bootstrap       = join(",", [for eni in aws_network_interface.broker : "${eni.private_ip}:${local.port}"])
}

resource "aws_security_group" "broker" {
  name        = "${var.name}-kafka"
  description = "Kafka ${var.name}: clients and controllers from inside the VPC only"
  vpc_id      = var.vpc_id
  tags        = var.tags

  ingress {
    description = "Kafka clients and replication"
    from_port   = local.port
    to_port     = local.port
    protocol    = "tcp"
    cidr_blocks = [var.vpc_cidr]
  }

  ingress {
    description = "KRaft controller quorum"
    from_port   = local.controller_port
    to_port     = local.controller_port
    protocol    = "tcp"
    cidr_blocks = [var.vpc_cidr]
  }

  egress {
    description = "Release downloads through the NAT gateways, AWS APIs"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }

  egress {
    description = "Replication and quorum traffic to the other brokers"
    from_port   = local.port
    to_port     = local.controller_port
    protocol    = "tcp"
    cidr_blocks = [var.vpc_cidr]
  }
}

resource "aws_network_interface" "broker" {
  count           = var.broker_count
  subnet_id       = data.aws_subnet.broker[count.index].id
  security_groups = [aws_security_group.broker.id]
  tags            = merge(var.tags, { Name = "${var.name}-kafka-${count.index + 1}", KafkaCluster = var.name })
}

resource "aws_ebs_volume" "data" {
  count             = var.broker_count
  availability_zone = data.aws_subnet.broker[count.index].availability_zone
  size              = var.data_volume_size_gb
  type              = "gp3"
  encrypted         = true
  kms_key_id        = var.kms_key_arn
  tags              = merge(var.tags, { Name = "${var.name}-kafka-${count.index + 1}-data", KafkaCluster = var.name })
}

# The brokers may attach only this cluster's interfaces and volumes.
data "aws_iam_policy_document" "attach" {
  statement {
    actions   = ["ec2:AttachNetworkInterface", "ec2:AttachVolume"]
    resources = concat(aws_network_interface.broker[*].arn, aws_ebs_volume.data[*].arn, ["arn:aws:ec2:*:*:instance/*"])
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/KafkaCluster"
      values   = [var.name]
    }
  }
  statement {
    actions   = ["ec2:DescribeNetworkInterfaces", "ec2:DescribeVolumes"]
    resources = ["*"]
  }
}

module "broker" {
  source              = "../instance_group"
  count               = var.broker_count
  name                = "${var.name}-kafka-${count.index + 1}"
  size                = 1
  subnet_ids          = [data.aws_subnet.broker[count.index].id]
  ami_id              = var.ami_id
  instance_type       = var.instance_type
  security_group_ids  = [aws_security_group.broker.id]
  attach_iam_policy   = true
  iam_policy_json     = data.aws_iam_policy_document.attach.json
  root_volume_size_gb = 30
  kms_key_arn         = var.kms_key_arn
  tags                = merge(var.tags, { KafkaCluster = var.name })
  user_data = templatefile("${path.module}/user_data.sh.tftpl", {
    node_id         = count.index + 1
    cluster_id      = var.cluster_id
    voters          = local.voters
    advertised_host = aws_network_interface.broker[count.index].private_ip
    eni_id          = aws_network_interface.broker[count.index].id
    volume_id       = aws_ebs_volume.data[count.index].id
    attach_volume   = file("${path.module}/../instance_group/attach-volume.sh")
    kafka_version   = var.kafka_version
    kafka_sha512    = var.kafka_sha512
    port            = local.port
    controller_port = local.controller_port
    replication     = min(3, var.broker_count)
    min_insync      = max(1, min(3, var.broker_count) - 1)
  })
}
