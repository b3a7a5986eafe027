//! deprov-aws
