# The S3 bucket of the lake loaders' Delta tables (<prefix>/<table>), private and encrypted with
# the environment's key, and the IAM policy a loader needs on it. Delta keeps its own history and
# the loaders vacuum what no version references, so the bucket has no versioning and no
# lifecycle rules: either would keep or delete files behind the tables' back.
locals {
  table_arn = "${aws_s3_bucket.this.arn}/${var.prefix}/*"
}

resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_21:Versioning off: Delta tables keep their own versions, and vacuumed files would linger as noncurrent versions
  #checkov:skip=CKV2_AWS_61:No lifecycle rules: the loaders' vacuum removes unreferenced files, and an expiration rule would delete live table files
  #checkov:skip=CKV_AWS_144:A derived copy of the read cluster's clean topics; cross-region replication is the environment's decision, not this module's
  #checkov:skip=CKV_AWS_18:Server access logs need a second bucket; record S3 data events with CloudTrail where an audit trail is wanted
  #checkov:skip=CKV2_AWS_62:Nothing consumes object events: readers find new files through the Delta log
  bucket = var.bucket_name
  tags   = var.tags
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket                  = aws_s3_bucket.this.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# ACLs off: every object belongs to the bucket owner, whoever wrote it.
resource "aws_s3_bucket_ownership_controls" "this" {
  bucket = aws_s3_bucket.this.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

# A bucket key: one KMS request per bucket and key period instead of one per Parquet file.
resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = true
  }
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.this.arn,
      "${aws_s3_bucket.this.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  bucket = aws_s3_bucket.this.id
  policy = data.aws_iam_policy_document.bucket.json
  # The public access block first, so that this policy is never briefly the only guard.
  depends_on = [aws_s3_bucket_public_access_block.this]
}

# What a loader does to its tables: list a table's log and files, read and write them (commits
# are conditional puts, so no lock table), delete what vacuum removes, clean up multipart uploads
# of a loader that died mid-file; and use the key for those objects.
data "aws_iam_policy_document" "loader" {
  statement {
    sid       = "ListTables"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.this.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [var.prefix, "${var.prefix}/*"]
    }
  }
  statement {
    sid = "ReadWriteTables"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = [local.table_arn]
  }
  statement {
    sid       = "UseTheKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
  }
}
